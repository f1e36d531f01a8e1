package testenv

import (
	_ "embed"
	"strings"

	pb "stevedore/proto/stevedore/v1"
)

//go:embed octopus/deploy.sh
var octopusBash string

//go:embed octopus/deploy.py
var octopusPython string

// LevelLine is a stdout line and the level it must arrive with.
type LevelLine struct {
	Text  string
	Level pb.LogLevel
}

// OctopusScript is a deployment script written against Octopus's helpers
// (octopus/deploy.sh, octopus/deploy.py), run with OctopusVariables, and
// what an Octopus user expects of it wherever it runs.
type OctopusScript struct {
	Name     string
	Syntax   pb.Syntax
	Body     string
	WantExit int
	// WantStdout: "WORK" stands for the step's work directory.
	WantStdout []LevelLine
}

// The reason, output variables and artifact every OctopusScript ends with.
const (
	OctopusReason   = "Deployment failed: smoke test"
	OctopusSecret   = "pa55-w0rd-octopus"
	OctopusArtifact = "Report.txt"
)

// OctopusVariables are the step variables the scripts read.
func OctopusVariables() []*pb.Variable {
	return []*pb.Variable{
		{Name: "Octopus.Action.Name", Value: "Deploy web"},
		{Name: "MyApp.ConnectionString", Value: "Server=db;User='app'"},
		{Name: "MyApp.Password", Value: OctopusSecret, Sensitive: true},
	}
}

// OctopusScripts are the bash and the python script.
func OctopusScripts() []OctopusScript {
	const (
		def       = pb.LogLevel_LOG_LEVEL_UNSPECIFIED
		verbose   = pb.LogLevel_LOG_LEVEL_VERBOSE
		wait      = pb.LogLevel_LOG_LEVEL_WAIT
		warning   = pb.LogLevel_LOG_LEVEL_WARNING
		highlight = pb.LogLevel_LOG_LEVEL_HIGHLIGHT
	)
	common := []LevelLine{
		{"Connection string is: Server=db;User='app'", def},
		{"Password is: ********", def},
		{"Action: Deploy web", def},
		{"Missing: []", def},
		{"the new password is ********", def},
	}
	tail := []LevelLine{
		{"Connecting to the load balancer", verbose},
		{"Waiting for the load balancer to drain", wait},
		{"Disk is 91% full", warning},
		{"Deployed", highlight},
	}
	cat := func(parts ...[]LevelLine) []LevelLine {
		var out []LevelLine
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	return []OctopusScript{
		{Name: "bash", Syntax: pb.Syntax_SYNTAX_BASH, Body: octopusBash, WantExit: 1, WantStdout: cat(common, []LevelLine{
			{"Collecting report.txt as an artifact...", def},
			{"Artifact Report.txt will be collected from report.txt after this step completes", verbose},
		}, tail)},
		// failstep exits -1, as Octopus's does.
		{Name: "python", Syntax: pb.Syntax_SYNTAX_PYTHON, Body: octopusPython, WantExit: 255, WantStdout: cat(common, []LevelLine{
			{"Artifact Report.txt will be collected from WORK/report.txt after this step completes", verbose},
		}, tail)},
	}
}

// Stdout returns WantStdout with WORK replaced by the work directory.
func (s OctopusScript) Stdout(work string) []LevelLine {
	out := make([]LevelLine, len(s.WantStdout))
	for i, l := range s.WantStdout {
		out[i] = LevelLine{strings.ReplaceAll(l.Text, "WORK", work), l.Level}
	}
	return out
}
