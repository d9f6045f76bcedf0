"""Process-level helpers under everything else: signals, fault points, retries, rendering."""
