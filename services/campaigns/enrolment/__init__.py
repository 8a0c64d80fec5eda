"""Enrolment: contacts entering a journey, exactly once per (journey, contact, trigger
occurrence), set-based, under the journey's re-entry policy."""
