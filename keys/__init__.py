"""Identity, signing and trust: Ed25519 keys, DSSE envelopes, the trust bundle, the federation CA, partner tokens."""
