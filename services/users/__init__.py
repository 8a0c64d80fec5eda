"""users service: Contacts and their identities (OneID), WeCom and webhook ingestion, consent.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

SERVICE = "users"
