// Readiness probe for scripts/infra: a real produce/consume round trip against
// the local Kafka broker. Usage: java -cp <kafka classpath>:<classes> KafkaProbe <bootstrap> <topic> <timeout-ms>
// Exit 0 when the record it produced is read back; 1 (with a reason on stderr) otherwise.

import java.time.Duration;
import java.util.Collections;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class KafkaProbe {
    public static void main(String[] args) throws Exception {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:19092";
        String topic = args.length > 1 ? args[1] : "ledger-infra-probe";
        long timeoutMs = args.length > 2 ? Long.parseLong(args[2]) : 20000L;
        long deadline = System.currentTimeMillis() + timeoutMs;
        int reqTimeout = (int) Math.max(1000, Math.min(timeoutMs, 10000));

        Properties common = new Properties();
        common.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        common.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, reqTimeout);
        common.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, reqTimeout);
        common.put(AdminClientConfig.CLIENT_ID_CONFIG, "ledger-infra-probe");

        try (Admin admin = Admin.create(common)) {
            try {
                admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1)))
                        .all().get(reqTimeout, TimeUnit.MILLISECONDS);
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    fail("cannot create probe topic " + topic + ": " + e.getCause());
                }
            }
        }

        String payload = "probe-" + UUID.randomUUID();
        Properties pp = new Properties();
        pp.putAll(common);
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        pp.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        pp.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, reqTimeout);
        pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, Math.max(reqTimeout, 2000) + 1000);
        pp.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        RecordMetadata meta;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
            meta = producer.send(new ProducerRecord<>(topic, 0, "probe", payload))
                    .get(reqTimeout + 2000L, TimeUnit.MILLISECONDS);
        } catch (ExecutionException e) {
            fail("produce to " + topic + " failed: " + e.getCause());
            return;
        }

        Properties cp = new Properties();
        cp.putAll(common);
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        TopicPartition tp = new TopicPartition(topic, meta.partition());
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(cp)) {
            consumer.assign(Collections.singletonList(tp));
            consumer.seek(tp, meta.offset());
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    if (payload.equals(r.value())) {
                        System.out.println("kafka round trip ok: " + topic + "-" + r.partition() + "@" + r.offset());
                        return;
                    }
                }
            }
        }
        fail("record produced to " + topic + "@" + meta.offset() + " was not read back in time");
    }

    private static void fail(String msg) {
        System.err.println(msg);
        System.exit(1);
    }
}
