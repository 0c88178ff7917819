"""CMI 'Detect Behavior with Sensor Data': schema, features, models, bundle and inference."""

__version__ = "0.1.0"
