"""Developer helper: ``python -m rapport.db.revision "message"`` autogenerates a migration."""

import sys
import tempfile

from alembic import command
from alembic.config import Config

from rapport.db.engine import MIGRATIONS, upgrade

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/rev.db"
        upgrade(url)
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", url)
        command.revision(cfg, message=sys.argv[1], autogenerate=True)
