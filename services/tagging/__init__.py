"""tagging service: Tags and weights, RFM, lifecycle stages, segments.

Other services read from it only through functions exported here, and
otherwise talk to it through events.
"""

SERVICE = "tagging"
