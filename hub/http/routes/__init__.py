"""The API's routers, one module per resource; hub/http/api.py includes them."""
