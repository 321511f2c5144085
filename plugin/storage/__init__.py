"""What the service keeps: issued cards, feedback and the JWT replay cache (``store``), card
suppression after an override (``suppression``), and the Alembic migrations that build them."""
