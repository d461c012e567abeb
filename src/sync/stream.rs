//! `<provider>.folder`: one batch of one message stream above its cursor. The cursor
//! commits with the rows, the threads they belong to, the deliveries to follow and the
//! next batch, in one fenced transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;

use crate::queue::Finish;
use crate::worker::{Handler, JobCtx, JobResult};

use super::engine::Engine;
use super::plan::{self, StreamPayload};
use super::store::{self, Progress};
use super::vocab::{Follow, MessageRow};

pub struct StreamBatchJob {
    pub provider: &'static str,
    pub engine: Arc<Engine>,
}

#[async_trait::async_trait]
impl Handler for StreamBatchJob {
    async fn run(&self, job: &JobCtx) -> JobResult {
        let p: StreamPayload = job.payload()?;
        let account = self.engine.get(self.provider, &p.account)?;
        let source = account.stream()?;
        let a = &account.cfg;
        let after = match (p.after, p.full) {
            (Some(id), _) => Some(id),
            (None, true) => None,
            (None, false) => store::cursor(&job.pool, &a.id, &p.stream).await?,
        };
        // No cursor yet: only the cold-start window, not the whole history.
        let since = match after {
            None => Utc::now().checked_sub_signed(source.cold_start()),
            Some(_) => None,
        };
        account.pace(&self.engine, job).await?;
        let batch = source.read(&p.stream, after, since).await;
        account.observe(&batch);
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return Err(account.classify(&self.engine, &job.pool, e).await),
        };
        let more = batch.full && batch.highest.is_some();
        let mut progress = Progress {
            http_calls: 1,
            ..Progress::default()
        };
        let mut threads: BTreeMap<String, Vec<MessageRow>> = BTreeMap::new();
        let mut follows: Vec<(String, Follow)> = Vec::new();
        for m in progress.take_good(batch.messages) {
            if let Some(f) = m.follow {
                follows.push((m.row.message_id.clone(), f));
            }
            threads.entry(m.thread_id).or_default().push(m.row);
        }

        let streams = source.streams();
        let mut jobs = Vec::new();
        if let (true, Some(run_id)) = (more, job.run_id) {
            let next = StreamPayload {
                after: batch.highest,
                ..p.clone()
            };
            jobs.push(plan::stream_job(a, &streams, run_id, next));
        }

        let mut tx = job.begin(Finish::Done).await?;
        let written = store::upsert_messages(&mut tx, &a.id, &threads).await?;
        let numbers: Vec<String> = threads.into_keys().collect();
        store::upsert_threads_from_messages(&mut tx, &a.id, a.provider, &numbers).await?;
        if let Some(h) = batch.highest {
            store::advance_cursor(&mut tx, &a.id, &p.stream, h).await?;
        }
        if !more && streams.last() == Some(&p.stream) {
            // Safety net: a check that failed for good (say, a rejected token) comes back.
            let prefix = super::keys::check_dedupe_prefix(a.provider, &a.id);
            let orphans = store::unchecked_deliveries(&mut tx, &a.id, &prefix).await?;
            jobs.extend(
                orphans
                    .into_iter()
                    .map(|id| plan::check_job(a, id, job.run_id, Utc::now())),
            );
        }
        // Only messages followed from now on get a check; the others have theirs already.
        let (first, _) = source.check_times();
        let first_check = Utc::now() + chrono::Duration::from_std(first).unwrap_or_default();
        let refs: Vec<(&str, &Follow)> = follows.iter().map(|(m, f)| (m.as_str(), f)).collect();
        let new = store::follow_deliveries(&mut tx, &a.id, &refs).await?;
        jobs.extend(
            new.into_iter()
                .map(|id| plan::check_job(a, id, job.run_id, first_check)),
        );
        crate::queue::enqueue_batch(&mut *tx, &jobs).await?;
        progress.messages_written = i32::try_from(written).unwrap_or(i32::MAX);
        store::add_progress(&mut tx, job.run_id, Some(&p.stream), &progress).await?;
        job.commit(tx).await
    }

    async fn after(&self, job: &JobCtx) {
        super::start::advance_run(&self.engine, &job.pool, job.run_id).await
    }
}
