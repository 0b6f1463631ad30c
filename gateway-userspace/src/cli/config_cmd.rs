//! `xgate config schema|dump`: the config file's JSON Schema, and the
//! effective config with its secrets redacted.

use std::{path::Path, process::ExitCode};

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema of the config file, for editors (the YAML language server). The
    /// package installs it as /usr/share/xgate/xgate.schema.json; the repository keeps it as
    /// docs/xgate.schema.json.
    Schema,
    /// Print the effective config of --config: defaults filled in, ${ENV_VAR} and *_file
    /// values resolved, every secret shown as <redacted>. Exits 1 when the file is not valid.
    Dump {
        /// Print JSON instead of YAML.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config_path: &Path, action: &ConfigCommand) -> anyhow::Result<ExitCode> {
    match action {
        ConfigCommand::Schema => {
            println!("{}", serde_json::to_string_pretty(&Config::json_schema())?);
        }
        ConfigCommand::Dump { json } => {
            let config = match Config::load(config_path) {
                Ok(config) => config,
                Err(errors) => {
                    eprint!("{errors}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let value = config.redacted();
            if *json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", serde_yaml::to_string(&value)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
