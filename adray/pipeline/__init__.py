"""adray.pipeline"""
