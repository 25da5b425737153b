"""HTTP trigger: maps HTTP routes to functions with API-Gateway-style events and responses."""
