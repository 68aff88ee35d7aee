//! fsck of a remote volume's metadata generations in the bucket (`remote::generation`): the
//! one this store last published or installed, and the volume's newest, must be there and,
//! with `--verify-data`, download and open whole (checksum or authentication tags, every
//! section decoded), or an `attach` elsewhere passes them over for an older state.

use super::{FindingKind, FsckReport, Severity, item};
use crate::remote::config::VolumeConfig;
use crate::remote::generation;
use crate::remote::sync::{PublishState, list_generations};
use crate::store::remote::RemoteStore;
use std::path::Path;

/// Reports, for a remote store, generations of its volume that are missing or damaged in the
/// bucket. Nothing for a local store; one warning if the bucket cannot be asked.
pub fn check_generations(store: &Path, verify: bool, report: &mut FsckReport) {
    let finding =
        |severity, message: String| item(FindingKind::GenerationDamaged, severity, message).finding;
    let config = match VolumeConfig::load(store) {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            report.findings.push(finding(
                Severity::Warning,
                format!("cannot read remote.json to check the volume's generations: {e}"),
            ));
            return;
        }
    };
    let result = (|| -> crate::error::Result<Vec<(Severity, String)>> {
        let key = config.load_key()?;
        let client = RemoteStore::new(&config.client_config()?)?;
        let keys = config.keys();
        let state = PublishState::load(store)?;
        let gens = list_generations(&client, &keys)?;
        let mut out = Vec::new();
        let mine = (state.generation > 0).then(|| keys.gen_key(state.generation, state.writer));
        let head = gens.first().map(|(_, _, k)| k.clone());
        if let Some(k) = &mine
            && !gens.iter().any(|(_, _, g)| g == k)
        {
            out.push((
                Severity::Error,
                format!(
                    "generation {} that this store published or installed ({k}) is missing \
                     from the bucket: an attach elsewhere sees an older state (a publication, \
                     dedupfs sync, puts a new one above it)",
                    state.generation
                ),
            ));
        }
        if !verify {
            return Ok(out);
        }
        let scratch = crate::remote::config::state_dir(store)?;
        let mut checked = Vec::new();
        for k in [mine, head].into_iter().flatten() {
            if checked.contains(&k) || !gens.iter().any(|(_, _, g)| *g == k) {
                continue;
            }
            if let Err(e) = generation::fetch(&client, &k, key.as_ref(), &scratch) {
                let newest = Some(&k) == gens.first().map(|(_, _, h)| h);
                out.push((
                    Severity::Error,
                    format!(
                        "generation object {k}{} cannot be read: {e} (attach passes it over for \
                         an older one; a publication, dedupfs sync, puts a good one above it)",
                        if newest { ", the volume's newest," } else { "" }
                    ),
                ));
            }
            checked.push(k);
        }
        Ok(out)
    })();
    match result {
        Ok(found) => {
            for (severity, message) in found {
                report.findings.push(finding(severity, message));
            }
        }
        Err(e) => report.findings.push(finding(
            Severity::Warning,
            format!("cannot check the volume's generations in the bucket: {e}"),
        )),
    }
}
