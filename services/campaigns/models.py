"""Tables owned by the campaigns service, declared on shared.db.Base so the single
Alembic history sees them: each part keeps its own in its models.py."""

from __future__ import annotations

from services.campaigns.enrolment import models as enrolment_models
from services.campaigns.journeys import models as journeys_models
from services.campaigns.sends import models as sends_models
from services.campaigns.staff import models as staff_models

__all__ = ["enrolment_models", "journeys_models", "sends_models", "staff_models"]
