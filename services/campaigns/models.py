"""Tables owned by the campaigns service, declared on shared.db.Base so the single
Alembic history sees them: each part keeps its own in its models.py."""

from __future__ import annotations

from services.campaigns.enrolment import models as enrolment_models
from services.campaigns.journeys import models as journeys_models

__all__ = ["enrolment_models", "journeys_models"]
