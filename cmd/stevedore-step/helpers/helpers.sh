# stevedore step helpers for bash and sh, sourced before the step's script.
# Written by stevedore-step; this file holds no secret. The functions print
# service messages through the runner ("$STEVEDORE_RUNNER" emit), which
# base64-encodes the values, so the image needs no base64 tool.

# set_variable NAME VALUE [sensitive]: an output variable of the step.
set_variable() {
	case "${3-}" in
	sensitive | Sensitive | true | True | yes)
		"$STEVEDORE_RUNNER" emit setVariable "name=${1-}" "value=${2-}" sensitive=True ;;
	*)
		"$STEVEDORE_RUNNER" emit setVariable "name=${1-}" "value=${2-}" ;;
	esac
}

# get_variable NAME: prints a step variable's value (by its original name,
# "Octopus.Action.Name"); fails for an unknown name.
get_variable() {
	"$STEVEDORE_RUNNER" get-variable "${1-}"
}

# new_artifact PATH [NAME]: collect a file as an artifact of the step.
new_artifact() {
	case "${1-}" in
	/*) set -- "$1" "${2-}" ;;
	*) set -- "$PWD/${1-}" "${2-}" ;;
	esac
	if [ -n "$2" ]; then
		"$STEVEDORE_RUNNER" emit createArtifact "path=$1" "name=$2"
	else
		"$STEVEDORE_RUNNER" emit createArtifact "path=$1"
	fi
}

# mask VALUE: replace VALUE with ******** in the rest of the log.
mask() {
	"$STEVEDORE_RUNNER" emit mask "value=${1-}"
}

# fail_step MESSAGE: fail the step with MESSAGE as its reason.
fail_step() {
	"$STEVEDORE_RUNNER" emit failStep "message=${1-}"
	exit 1
}

# set_progress PERCENT [MESSAGE]: report the step's progress.
set_progress() {
	if [ -n "${2-}" ]; then
		"$STEVEDORE_RUNNER" emit progress "percentage=${1-}" "message=$2"
	else
		"$STEVEDORE_RUNNER" emit progress "percentage=${1-}"
	fi
}

# bash sources this file through BASH_ENV: the script's own child shells
# must not.
if [ -n "${BASH_ENV-}" ]; then
	unset BASH_ENV
fi
