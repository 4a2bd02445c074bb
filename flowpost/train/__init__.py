"""flowpost.train"""
