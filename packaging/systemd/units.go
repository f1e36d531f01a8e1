// Package systemd holds the systemd units of stevedore's agent and server,
// embedded so that `stevedore install` writes the same files this
// directory ships.
package systemd

import _ "embed"

// AgentUnit is stevedore-agent.service.
//
//go:embed stevedore-agent.service
var AgentUnit []byte

// AgentUnitName is the agent's unit, as systemctl names it.
const AgentUnitName = "stevedore-agent.service"

// ServerUnit is stevedore-server.service.
//
//go:embed stevedore-server.service
var ServerUnit []byte

// ServerUnitName is the server's unit, as systemctl names it.
const ServerUnitName = "stevedore-server.service"
