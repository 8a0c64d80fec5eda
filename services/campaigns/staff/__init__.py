"""Staff tasks: what a journey asks a staff member to do (a call, a visit, confirming a
WeCom mass message in their client), with a due time, counted per staff member."""
