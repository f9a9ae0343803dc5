"""The service's routes, one module per OpenAPI tag, each an ``APIRouter``."""
