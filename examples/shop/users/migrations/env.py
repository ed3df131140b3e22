from examples.shop._alembic_env import run
from examples.shop.users.models import Base

run(Base.metadata)
