package pgdb

// For the tests: migrate a list of their own (broken ones, slow ones), and
// load migrations from a file system of their own.
var (
	MigrateList    = migrate
	LoadMigrations = loadMigrations
	Redact         = redact
)
