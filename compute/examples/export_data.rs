//! Writes a shipped data set as safetensors (what `cloudchain data export` will call):
//! `cargo run -p compute --example export_data -- winequality wine.safetensors`.

use compute::datasets::{Builtin, write_builtin};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let which: Builtin = args
        .next()
        .unwrap_or_else(|| "winequality".into())
        .parse()?;
    let path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| format!("{}.safetensors", which.name())),
    );
    write_builtin(which, &path)?;
    println!("wrote {} to {}", which.name(), path.display());
    Ok(())
}
