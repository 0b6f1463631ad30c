//! `xgate-echo --listen 127.0.0.1:9001`: the demo upstream the quickstart
//! puts behind xgate. Every response describes the request it received.
use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Echo upstream for the xgate quickstart and tests")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name reported in every response's "upstream" field.
    #[arg(long, default_value = "demo")]
    name: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("xgate-echo: listening on {}", listener.local_addr()?);
    xgate_tests::upstream::serve(listener, args.name).await;
    Ok(())
}
