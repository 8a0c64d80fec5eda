"""The points economy's health: weekly earned/spent, inflation of outstanding points, alerts."""
