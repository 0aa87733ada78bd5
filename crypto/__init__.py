"""Field-level encryption: keyring, envelope encryption, blind indexes (see issue: encryption)."""
