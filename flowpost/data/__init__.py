"""flowpost.data"""
