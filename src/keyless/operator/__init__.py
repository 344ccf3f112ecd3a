"""The fleet operator: a kopf controller that keeps each KeylessApp's identities bound, a face over the engine."""
