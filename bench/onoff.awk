# onoff.awk - the on/off table of bench/vm-zc.sh and bench/vm-batch.sh, from the guest's
# "key value" lines: iops_MODE_JOB_rROUND N and cpu_MODE_JOB_rROUND WHO TICKS ... (MODE on or
# off), ticks_per_s N. Per job: mean IOPS of each mode, on/off per round, their median, and
# the CPU per I/O of the measured process (ramp included: it runs at about the same rate).
# Variables: secs (seconds per run, ramp included), who (the column's name).
/^ticks_per_s/ { tps = $2 }
/^iops_/ { split($1, k, "_"); r = substr(k[4], 2); io[k[2], k[3], r] = $2; jobs[k[3]] = 1; if (r + 0 > R) R = r + 0 }
/^cpu_/ { split($1, k, "_"); cpu[k[2], k[3], substr(k[4], 2)] = $3 }
END {
    printf "| job | on IOPS | off IOPS | on/off per round | median | %s us/IO on | off |\n|---|---|---|---|---|---|---|\n", who
    for (j in jobs) {
        n = 0; list = ""; son = 0; soff = 0; con = 0; coff = 0
        for (r = 1; r <= R; r++) if (io["off", j, r] > 0 && io["on", j, r] > 0) {
            x[++n] = io["on", j, r] / io["off", j, r]; list = list sprintf("%s%.2f", n > 1 ? " " : "", x[n])
            son += io["on", j, r]; soff += io["off", j, r]
            con += cpu["on", j, r] * 1e6 / tps / (io["on", j, r] * secs); coff += cpu["off", j, r] * 1e6 / tps / (io["off", j, r] * secs)
        }
        if (n == 0) continue
        for (a = 1; a <= n; a++) for (b = a + 1; b <= n; b++) if (x[b] < x[a]) { t = x[a]; x[a] = x[b]; x[b] = t }
        med = n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
        printf "| %s | %.0f | %.0f | %s | **%.2f** | %.1f | %.1f |\n", j, son / n, soff / n, list, med, con / n, coff / n
    }
}
