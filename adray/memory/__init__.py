"""adray.memory"""
