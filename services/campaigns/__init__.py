"""campaigns service: SOP journeys: triggers, timed steps, sends under caps and consent.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

SERVICE = "campaigns"
