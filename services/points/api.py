"""The points service's router: each part's routes under /v1, tagged with the service.

The routes themselves live in each part's api.py (ledger, rules, catalog, tiers,
benefits, health, referrals).
"""

from __future__ import annotations

from fastapi import APIRouter

from services.points import SERVICE
from services.points.benefits.api import router as benefits_router
from services.points.catalog.api import router as catalog_router
from services.points.health.api import router as health_router
from services.points.ledger.api import router as ledger_router
from services.points.referrals.api import router as referrals_router
from services.points.referrals.report_api import router as referral_report_router
from services.points.rules.api import router as rules_router
from services.points.tiers.api import router as tiers_router

router = APIRouter(prefix="/v1", tags=[SERVICE])
router.include_router(catalog_router)
# Benefits and health: declared first, so /points/benefits/report is not a benefit code.
router.include_router(benefits_router)
router.include_router(health_router)
router.include_router(ledger_router)
router.include_router(referral_report_router)
router.include_router(referrals_router)
router.include_router(rules_router)
router.include_router(tiers_router)
