"""The redemption catalog: items, lottery draws, redemptions, and the holds of points + cash
items."""
