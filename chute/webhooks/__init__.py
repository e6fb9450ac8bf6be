"""Webhooks (DESIGN §7): events written with the state changes that cause them, and
delivered by the task queue, signed as the Standard Webhooks specification says."""
