"""Identity, signing and trust: Ed25519 keys, DSSE, the trust bundle, the CA, partner tokens."""
