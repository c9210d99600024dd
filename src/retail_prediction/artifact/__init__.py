"""The model archive (`archive`: format, packing, verification) and where archives live (`store`: a local
file or S3)."""
