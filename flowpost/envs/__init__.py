"""flowpost.envs"""
