"""Operations: metrics, the admin HTTP endpoint, logging helpers and graceful drain."""
