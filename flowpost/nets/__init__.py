"""flowpost.nets"""
