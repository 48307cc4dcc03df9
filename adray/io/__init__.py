"""adray.io"""
