//! `xgate completions SHELL` and `xgate man --out-dir DIR`: shell
//! completions and manual pages, generated from the command line's own
//! definition so they never drift from it.

use std::{path::Path, process::ExitCode};

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

pub fn completions(shell: Shell) -> anyhow::Result<ExitCode> {
    clap_complete::generate(shell, &mut Cli::command(), "xgate", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Writes xgate.1 and one page per subcommand (xgate-blocklist-add.1, ...).
pub fn man(out_dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out_dir.display()))?;
    clap_mangen::generate_to(Cli::command(), out_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot write the manual pages to {}: {e}",
            out_dir.display()
        )
    })?;
    println!("wrote the manual pages to {}", out_dir.display());
    Ok(ExitCode::SUCCESS)
}
