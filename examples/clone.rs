//! A standalone clone app server for manual experiments: every answer names the clone and
//! its code version; `GET /healthz` answers `ok`.
//!
//! `cargo run --example clone -- --listen 127.0.0.1:9001 --name clone-1 --version 1.0.0`

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "clone-1")]
    name: String,
    #[arg(long, default_value = "1.0.0")]
    version: String,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            println!(
                "{} listening on http://{}/",
                args.name,
                listener.local_addr()?
            );
            clonelb::demo::serve_clone(listener, args.name, args.version).await;
            Ok(())
        })
}
