"""flowpost.flows"""
