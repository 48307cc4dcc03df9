"""adray: distributed batch scoring for industrial image anomaly detection on Ray."""

__version__ = "0.1.0"
