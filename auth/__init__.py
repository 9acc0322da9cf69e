"""Who may connect to INCL's NATS server and what each identity may publish and read.

- `keys`: nkey seeds and the credential files that carry them (mode 0600, in a 0700 folder).
- `identities`: the registry of users, agents and the controller, with their public keys.
- `permissions`: one identity's NATS subject permissions (pure).
- `serverconf`: the nats-server configuration rendered from the registry.
"""
