from examples.shop._alembic_env import run
from examples.shop.orders.models import Base

run(Base.metadata)
