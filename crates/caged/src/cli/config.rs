//! `caged config validate FILE` and `caged config schema`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check a .caged.yaml; errors name the key and line.
    Validate { file: PathBuf },
    /// Print the JSON Schema of .caged.yaml (for editors).
    Schema,
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate { file } => {
            super::create::load_config(file)?;
            println!("{}: ok", file.display());
        }
        Command::Schema => output::json(&caged_domain::config::json_schema()),
    }
    Ok(ExitCode::SUCCESS)
}
