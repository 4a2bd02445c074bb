"""flowpost.adapters"""
