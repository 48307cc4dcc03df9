"""adray.train"""
