"""Tables owned by the tagging service, declared on shared.db.Base so the single
Alembic history sees them: each part keeps its own in its models.py."""

from __future__ import annotations

from services.tagging.profile import models as profile_models
from services.tagging.rules import models as rules_models
from services.tagging.segments import models as segments_models
from services.tagging.tags import models as tags_models
from services.tagging.wecom import models as wecom_models

__all__ = ["profile_models", "rules_models", "segments_models", "tags_models", "wecom_models"]
