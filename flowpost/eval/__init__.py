"""flowpost.eval"""
