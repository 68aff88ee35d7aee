//! fsck of the metadata backups in `STORE/backups` (`meta::backup`): each copy must open and
//! hold a root directory, or a restore would pass it over.

use super::{FindingKind, FsckReport, Severity, item};
use crate::meta::backup;
use std::path::Path;

/// Lists the store's backups in `report` and reports those that cannot be read.
pub fn check_backups(store: &Path, report: &mut FsckReport) {
    let copies = match backup::list(store) {
        Ok(c) => c,
        Err(e) => {
            report.findings.push(
                item(
                    FindingKind::BackupDamaged,
                    Severity::Warning,
                    format!("cannot list the metadata backups: {e}"),
                )
                .finding,
            );
            return;
        }
    };
    if copies.is_empty() {
        report.findings.push(item(
            FindingKind::NoBackup,
            Severity::Info,
            "no metadata backup yet (a mounted volume takes one at unmount; `dedupfs backup` takes one now)".into(),
        )
        .finding);
    }
    for b in &copies {
        if let Err(e) = backup::check(&b.path) {
            report.findings.push(
                item(
                    FindingKind::BackupDamaged,
                    Severity::Warning,
                    format!(
                        "metadata backup {} cannot be read ({e}); a restore would pass it over",
                        b.path.display()
                    ),
                )
                .finding,
            );
        }
    }
    report.backups = copies;
}
