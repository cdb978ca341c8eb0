"""The API's routes, one module per concern; each route declares its permission."""
